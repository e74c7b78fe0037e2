"""The schema: forward-only SQL files (NNNN_name.sql), package data applied by maskline/migrate.py."""
