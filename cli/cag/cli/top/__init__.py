"""`cag top`'s parts: where the replicas are (sources), what they and the event stream say (model, fed by polling
and by an event feed), and how that looks (render)."""
