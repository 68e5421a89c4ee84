"""host_sim: a host simulator for the Hyper-V guest file-copy protocol."""
