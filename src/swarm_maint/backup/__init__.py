"""The backup engine: content-defined chunks, packs, index, snapshots, on any Storage."""
