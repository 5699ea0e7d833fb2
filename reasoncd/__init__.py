"""Support code for ReasonCD: data, question bank, metrics and figures. Not shipped with the weights."""
