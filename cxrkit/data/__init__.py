"""Data: label tables, image readers, preprocessing, augmentation, datasets, demo data."""
