"""The detectors, run in this order (deny_fallback last: it reads what the others found).

Adding a detector touches three files: the detector module, its line here, its test."""

DETECTORS = ()
