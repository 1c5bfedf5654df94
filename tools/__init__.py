"""Developer tools for klieo_shm (not part of the installed package)."""
