"""One reader per kind of source: each fills a FetchJob's staging folder with image files."""
