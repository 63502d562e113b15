"""Seeded data generators and corpora for sequence tasks."""
