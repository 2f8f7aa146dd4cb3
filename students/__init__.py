"""Binarized students: the BI-DiffSR UNet, its binary layers, baseline binarizers and complexity accounting.

Published pipelines record the student class by module path (`["students.bidiffsr", "BIDiffSRUNet"]` in
model_index.json) and import it from there when loading: keep that module path.
"""

from students.bidiffsr import BIDiffSRUNet

__all__ = ["BIDiffSRUNet"]
