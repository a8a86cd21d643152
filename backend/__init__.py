"""The Label Studio ML backend: HTTP, Label Studio formats, image fetching. Calls into model/ only via service.py."""
