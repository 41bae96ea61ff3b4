//! The partial aggregate states of one aggregate column, folded per group.
//!
//! Groups are numbered from 0 in the order they appear; [`AggState::add`] folds one input row
//! into its group (a new group takes the row's state as it is) and [`AggState::finish`] builds
//! the column of the groups asked for, in the order asked, and starts over.

use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int64Array, UInt64Array,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use arrow::error::ArrowError;
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use sluice_config::Aggregate;
use sluice_transform::hll::{BadSketch, Sketch};

use super::kway::ORDER;

/// Why a row could not be folded into its group.
pub(super) enum FoldError {
    /// An integer sum that does not fit its type.
    Overflow,
    Sketch(BadSketch),
}

/// The states of one column, one per group.
enum States {
    /// `count`, and `sum` of int64.
    SumI64(Vec<Option<i64>>),
    SumU64(Vec<Option<u64>>),
    SumF64(Vec<Option<f64>>),
    /// `min` or `max` of any type, compared in the row format (the sort order).
    Extreme {
        max: bool,
        converter: RowConverter,
        /// A null in the row format, for groups whose values were all null.
        null: OwnedRow,
        values: Vec<Option<OwnedRow>>,
    },
    Sketch(Vec<Option<Sketch>>),
}

/// One batch's column, ready to fold row by row.
pub(super) enum Prepared<'a> {
    I64(&'a Int64Array),
    U64(&'a UInt64Array),
    F64(&'a Float64Array),
    Rows(Rows, &'a ArrayRef),
    Binary(&'a BinaryArray),
}

/// An aggregate column of the table and the states of its groups.
pub(super) struct AggState {
    /// The column's index in the schema.
    pub(super) column: usize,
    pub(super) name: String,
    states: States,
}

impl AggState {
    pub(super) fn new(
        column: usize,
        name: &str,
        aggregate: Aggregate,
        data_type: &DataType,
    ) -> Result<AggState, ArrowError> {
        let states = match (aggregate, data_type) {
            (Aggregate::Count | Aggregate::Sum, DataType::Int64) => States::SumI64(Vec::new()),
            (Aggregate::Sum, DataType::UInt64) => States::SumU64(Vec::new()),
            (Aggregate::Sum, DataType::Float64) => States::SumF64(Vec::new()),
            (Aggregate::Min | Aggregate::Max, t) => {
                let converter =
                    RowConverter::new(vec![SortField::new_with_options(t.clone(), ORDER)])?;
                let null = converter
                    .convert_columns(&[new_null_array(t, 1)])?
                    .row(0)
                    .owned();
                States::Extreme {
                    max: aggregate == Aggregate::Max,
                    converter,
                    null,
                    values: Vec::new(),
                }
            }
            (Aggregate::ApproxDistinct, DataType::Binary) => States::Sketch(Vec::new()),
            (a, t) => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "column `{name}`: no {} state of type {t}",
                    a.function()
                )))
            }
        };
        Ok(AggState {
            column,
            name: name.to_string(),
            states,
        })
    }

    /// `array`, this column of one batch, in the form [`AggState::add`] reads.
    pub(super) fn prepare<'a>(&self, array: &'a ArrayRef) -> Result<Prepared<'a>, ArrowError> {
        let wrong = || {
            ArrowError::InvalidArgumentError(format!(
                "column `{}` is of type {}",
                self.name,
                array.data_type()
            ))
        };
        Ok(match &self.states {
            States::SumI64(_) => {
                Prepared::I64(array.as_primitive_opt::<Int64Type>().ok_or_else(wrong)?)
            }
            States::SumU64(_) => {
                Prepared::U64(array.as_primitive_opt::<UInt64Type>().ok_or_else(wrong)?)
            }
            States::SumF64(_) => {
                Prepared::F64(array.as_primitive_opt::<Float64Type>().ok_or_else(wrong)?)
            }
            States::Extreme { converter, .. } => {
                Prepared::Rows(converter.convert_columns(&[Arc::clone(array)])?, array)
            }
            States::Sketch(_) => Prepared::Binary(array.as_binary_opt::<i32>().ok_or_else(wrong)?),
        })
    }

    /// Folds row `row` of `input` into group `group`, which is either known or the next new
    /// one. Nulls are skipped, as the aggregates skip them.
    pub(super) fn add(
        &mut self,
        group: usize,
        input: &Prepared<'_>,
        row: usize,
    ) -> Result<(), FoldError> {
        match (&mut self.states, input) {
            (States::SumI64(v), Prepared::I64(a)) => {
                fold(v, group, value(*a, row), i64::checked_add)
            }
            (States::SumU64(v), Prepared::U64(a)) => {
                fold(v, group, value(*a, row), u64::checked_add)
            }
            (States::SumF64(v), Prepared::F64(a)) => {
                fold(v, group, value(*a, row), |x, y| Some(x + y))
            }
            (States::Extreme { max, values, .. }, Prepared::Rows(rows, array)) => {
                let new = (!array.is_null(row)).then(|| rows.row(row));
                if group == values.len() {
                    values.push(new.map(|r| r.owned()));
                } else if let Some(new) = new {
                    let better = match &values[group] {
                        None => true,
                        Some(old) if *max => new > old.row(),
                        Some(old) => new < old.row(),
                    };
                    if better {
                        values[group] = Some(new.owned());
                    }
                }
                Ok(())
            }
            (States::Sketch(v), Prepared::Binary(a)) => {
                let new = match a.is_null(row) {
                    true => None,
                    false => Some(Sketch::from_bytes(a.value(row)).map_err(FoldError::Sketch)?),
                };
                fold(v, group, new, |mut x, y| {
                    x.merge(&y);
                    Some(x)
                })
            }
            // `prepare` made `input` from these very states.
            _ => unreachable!("a column prepared for another state"),
        }
    }

    /// The states of the groups in `order`, as a column; then no group is left.
    pub(super) fn finish(&mut self, order: &[usize]) -> Result<ArrayRef, ArrowError> {
        let array: ArrayRef = match &mut self.states {
            States::SumI64(v) => Arc::new(pick(v, order).collect::<Int64Array>()),
            States::SumU64(v) => Arc::new(pick(v, order).collect::<UInt64Array>()),
            States::SumF64(v) => Arc::new(pick(v, order).collect::<Float64Array>()),
            States::Extreme {
                converter,
                null,
                values,
                ..
            } => {
                let rows = order
                    .iter()
                    .map(|&g| values[g].as_ref().unwrap_or(null).row());
                let mut arrays = converter.convert_rows(rows)?;
                values.clear();
                return Ok(arrays.remove(0));
            }
            States::Sketch(v) => Arc::new(
                order
                    .iter()
                    .map(|&g| v[g].as_ref().map(Sketch::to_bytes))
                    .collect::<BinaryArray>(),
            ),
        };
        self.clear();
        Ok(array)
    }

    fn clear(&mut self) {
        match &mut self.states {
            States::SumI64(v) => v.clear(),
            States::SumU64(v) => v.clear(),
            States::SumF64(v) => v.clear(),
            States::Extreme { values, .. } => values.clear(),
            States::Sketch(v) => v.clear(),
        }
    }
}

fn value<T: arrow::datatypes::ArrowPrimitiveType>(
    a: &arrow::array::PrimitiveArray<T>,
    row: usize,
) -> Option<T::Native> {
    a.is_valid(row).then(|| a.value(row))
}

/// Folds `new` into state `group` with `combine` (`None` from it: an overflow); a null on
/// either side leaves the other.
fn fold<T>(
    states: &mut Vec<Option<T>>,
    group: usize,
    new: Option<T>,
    combine: impl FnOnce(T, T) -> Option<T>,
) -> Result<(), FoldError> {
    if group == states.len() {
        states.push(new);
        return Ok(());
    }
    if let Some(new) = new {
        let merged = match states[group].take() {
            None => new,
            Some(old) => combine(old, new).ok_or(FoldError::Overflow)?,
        };
        states[group] = Some(merged);
    }
    Ok(())
}

fn pick<'a, T: Copy>(
    states: &'a [Option<T>],
    order: &'a [usize],
) -> impl Iterator<Item = Option<T>> + 'a {
    order.iter().map(|&g| states[g])
}
