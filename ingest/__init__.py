"""Sources and the append-only event log: everything upstream of the projections."""
