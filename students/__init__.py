"""Binarized students: the BI-DiffSR UNet, its binary layers, baseline binarizers and complexity accounting."""
