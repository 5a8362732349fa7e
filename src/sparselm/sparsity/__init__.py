"""Masks (unstructured per row / per layer / per block, N:M), validation helpers and sparsity reports."""
from sparselm.sparsity.masks import (MaskError, check_sparsity, fraction_zero, is_nm, parse_pattern,
                                     row_fraction_zero, select_nm, select_unstructured)
from sparselm.sparsity.report import format_table, masks_of, sparsity_report, write_report

__all__ = ["MaskError", "check_sparsity", "fraction_zero", "is_nm", "parse_pattern", "row_fraction_zero",
           "select_nm", "select_unstructured", "format_table", "masks_of", "sparsity_report", "write_report"]
