"""gsi: guest-side receiver for the Hyper-V guest file-copy protocol."""
