"""Fault injection: the real `flatd run` against half-written files, junk, hostile headers,
crashes, full disks, vanishing directories, load, signals and time (issue 4)."""
