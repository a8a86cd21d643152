"""Core maths and I/O: clicks, masks, images, datasets, and the SQLite layer under the stores."""
