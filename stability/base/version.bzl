"""The project version: one place, read by the C++ core (STABILITY_VERSION) and the wheel."""

STABILITY_VERSION = "0.1.0"
