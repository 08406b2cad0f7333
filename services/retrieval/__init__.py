"""The retrieval service: collections, ingest and search over Qdrant."""
