"""What retention keeps in ``state_dir`` between passes: manifest cache, lock, reports."""
