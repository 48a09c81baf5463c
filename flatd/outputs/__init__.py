"""Master files and what decides about them: their names, contents and atomic
publication, the header cards copied into them, `latest/`, the operator's decisions,
each group's history, the settings a master was made with, `flatd promote`/`remake`."""
