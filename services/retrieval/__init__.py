"""Retrieval service backends: parsing, chunking, embedding, Milvus storage and search.

Nothing in this package knows about protobuf or gRPC; ``server.py`` translates between the wire
types and the dataclasses in :mod:`callisto.services.retrieval.models`.
"""
