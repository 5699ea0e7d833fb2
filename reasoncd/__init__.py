"""Support package of ReasonCD, split by stage (docs/ARCHITECTURE.md, "Package map"). Not shipped with the weights."""
