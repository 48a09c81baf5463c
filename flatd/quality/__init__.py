"""Quality checks: the frame checks settled before a combination, and the checks on a
finished master (against its inputs and the previous master), per extension for mosaics."""
