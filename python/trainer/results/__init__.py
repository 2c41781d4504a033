"""What runs leave behind: the results store, run outputs, model archives, lineage, exports, gc."""
