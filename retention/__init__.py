"""retention: macro-model fit of the simulated LTP curve -> retention factors -> netCDF tables.

Never imports brian2: a training node needs only the table (``load_retention_factors``).
"""

from retention.build import build_table, merge_tables
from retention.errors import RetentionTableError
from retention.factors import (
    VARIANTS,
    factor_matrix,
    increments,
    paper_factors,
    streaming_factors,
    validate_increments,
)
from retention.macro_model import (
    DEFAULT_FAMILIES,
    FAMILIES,
    FitResult,
    ModelSelection,
    fit_family,
    fit_macro_model,
)
from retention.table import (
    load_retention_factors,
    packaged_table_path,
    read_table,
    user_table_path,
    validate_table,
    write_table,
)

__all__ = [
    "DEFAULT_FAMILIES",
    "FAMILIES",
    "FitResult",
    "ModelSelection",
    "RetentionTableError",
    "VARIANTS",
    "build_table",
    "factor_matrix",
    "fit_family",
    "fit_macro_model",
    "increments",
    "load_retention_factors",
    "merge_tables",
    "packaged_table_path",
    "paper_factors",
    "read_table",
    "streaming_factors",
    "user_table_path",
    "validate_increments",
    "validate_table",
    "write_table",
]
