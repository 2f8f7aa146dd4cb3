"""Binarized students: the BI-DiffSR UNet, its binary layers, baseline binarizers and complexity accounting.

Published pipelines record the student class by module path (`["students.bidiffsr", "BiDiffSRUNet"]` in
model_index.json) and import it from there when loading: keep that module path. Folders saved before the class was
spelled `BiDiffSRUNet` name `BIDiffSRUNet`, which stays an alias.
"""

from students.bidiffsr import BIDiffSRUNet, BiDiffSRUNet

__all__ = ["BiDiffSRUNet", "BIDiffSRUNet"]
