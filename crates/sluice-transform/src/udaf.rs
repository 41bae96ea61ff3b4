//! `approx_distinct` as Sluice computes it, in three roles sharing one sketch:
//!
//! * in a view, [`approx_distinct_state`]: the partial state, a sketch (binary), stored per group
//!   and part;
//! * in a query over a table's rows, [`approx_distinct_final`]: the estimate (uint64), from the
//!   same sketch a view would build;
//! * when an aggregating table is read, [`merge_distinct`] (`sluice_merge_distinct`): the union
//!   of stored sketches, as an estimate.
//!
//! Because the three share the sketch and its hash, merging a view's states gives exactly the
//! estimate `approx_distinct` gives over the rows the view read.

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{exec_datafusion_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

use crate::hll::Sketch;

/// The name a view's merge function is called by in queries.
pub const MERGE_DISTINCT: &str = "sluice_merge_distinct";

/// What the function reads and what it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    /// Values in, the sketch out.
    State,
    /// Values in, the estimate out.
    Final,
    /// Sketches in, the estimate of their union out.
    Merge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Distinct {
    role: Role,
    signature: Signature,
}

impl Distinct {
    fn new(role: Role) -> Distinct {
        let signature = match role {
            Role::Merge => Signature::exact(vec![DataType::Binary], Volatility::Immutable),
            _ => Signature::any(1, Volatility::Immutable),
        };
        Distinct { role, signature }
    }
}

impl AggregateUDFImpl for Distinct {
    fn name(&self) -> &str {
        match self.role {
            Role::Merge => MERGE_DISTINCT,
            _ => "approx_distinct",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.role {
            Role::State => DataType::Binary,
            _ => DataType::UInt64,
        })
    }

    fn is_nullable(&self) -> bool {
        false
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(match self.role {
            Role::State => ScalarValue::Binary(Some(Sketch::default().to_bytes())),
            _ => ScalarValue::UInt64(Some(0)),
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "sketch"),
            DataType::Binary,
            true,
        ))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(DistinctAccumulator {
            role: self.role,
            sketch: Sketch::default(),
        }))
    }
}

#[derive(Debug)]
struct DistinctAccumulator {
    role: Role,
    sketch: Sketch,
}

impl Accumulator for DistinctAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some(values) = values.first() else {
            return Ok(());
        };
        match self.role {
            Role::Merge => self
                .sketch
                .merge_array(values)
                .map_err(|e| exec_datafusion_err!("{e}")),
            _ => self
                .sketch
                .add_array(values)
                .map_err(|e| exec_datafusion_err!("{e}")),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        match states.first() {
            Some(s) => self
                .sketch
                .merge_array(s)
                .map_err(|e| exec_datafusion_err!("{e}")),
            None => Ok(()),
        }
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.sketch.to_bytes()))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(match self.role {
            Role::State => ScalarValue::Binary(Some(self.sketch.to_bytes())),
            _ => ScalarValue::UInt64(Some(self.sketch.estimate())),
        })
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.size()
    }
}

/// `approx_distinct(x)` giving the sketch: the partial state a view stores.
pub fn approx_distinct_state() -> AggregateUDF {
    AggregateUDF::new_from_impl(Distinct::new(Role::State))
}

/// `approx_distinct(x)` giving the estimate, from the sketch a view would store.
pub fn approx_distinct_final() -> AggregateUDF {
    AggregateUDF::new_from_impl(Distinct::new(Role::Final))
}

/// `sluice_merge_distinct(sketch)`: the estimate of the union of stored sketches.
pub fn merge_distinct() -> AggregateUDF {
    AggregateUDF::new_from_impl(Distinct::new(Role::Merge))
}
