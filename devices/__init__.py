"""Printers, label layout and the print worker."""
