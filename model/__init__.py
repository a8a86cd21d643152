"""SegAgent: a segmentation agent that clicks like a human annotator. Independent of Label Studio."""
