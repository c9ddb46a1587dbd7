"""Helpers every stage family uses: atomic files, process pools, image grids, the stage runner."""
