"""Atelier's store: its tables, migrations and the queries every process shares."""
