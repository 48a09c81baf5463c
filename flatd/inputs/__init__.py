"""The input side: which paths are candidate frames, what makes a frame the same frame,
and the in-memory index of the frames grouped into sequences."""
