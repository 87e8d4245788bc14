"""Package managers behind one protocol (``base.PackageManager``), one module each."""
