"""The pictures beside each master: the preview and the ratio to the previous master,
for single images and mosaics (placed by DETSEC)."""
