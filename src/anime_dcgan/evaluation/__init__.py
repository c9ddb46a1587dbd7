"""The fid_reference, attribute_classifier and evaluate stages: one file per metric, the registry
that names them by protocol, the real set's reference statistics, and the HTML report."""
