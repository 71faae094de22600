"""The only package that knows QuPath: GeoJSON export of detections and import of scribbles."""
