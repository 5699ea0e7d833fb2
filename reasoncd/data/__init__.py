"""Data sets as ReasonCD samples: images, the sample format, folder layouts, SECOND, the synthetic set, the question bank."""
