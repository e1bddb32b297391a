"""What every part of the project shares: errors and their one-line exit, atomic file
writes, paths relative to the project, and the Hydra config plumbing. Imports neither
torch nor Lightning."""
