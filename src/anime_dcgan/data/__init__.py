"""Getting images (download stage) and turning them into one cached uint8 tensor file (preprocess)."""
