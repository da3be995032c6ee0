//! The fleet export's sums as a Python object (`scoring._kernel.FleetSums`), and the fleet
//! functions the differential tests call one at a time.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::fleet::{self, Contribution, Shifts, KEYS, SUMS};
use crate::state::{self, CustomerState};

/// One partition's sums (`scoring.fleet_sums.Sums`, as integers) kept in Rust, with the
/// windows of the export it belongs to: the kernel's recount adds and removes contributions
/// here without building a dict per customer.
#[pyclass]
pub struct FleetSums {
    sums: [i64; SUMS],
    /// Published bands other than healthy, at_risk and critical (an older model's), by name.
    other_bands: Vec<(String, i64)>,
    pub period_days: i64,
    pub response_days: f64,
    pub key_features: Vec<String>,
    pub shifts: Shifts,
}

impl FleetSums {
    pub fn apply(&mut self, part: &Contribution, sign: i64) {
        for (total, value) in self.sums.iter_mut().zip(&part.sums) {
            *total += sign * value;
        }
        if let Some(band) = &part.other_band {
            match self.other_bands.iter_mut().find(|(name, _)| name == band) {
                Some((_, count)) => *count += sign,
                None => self.other_bands.push((band.clone(), sign)),
            }
        }
    }

    pub fn contribution(&self, state: &CustomerState, at_ms: i64) -> Contribution {
        fleet::contribution(state, at_ms, self.period_days, self.response_days)
    }
}

#[pymethods]
impl FleetSums {
    #[new]
    fn new(period_days: i64, response_days: f64, key_features: Vec<String>) -> Self {
        FleetSums { sums: [0; SUMS], other_bands: Vec::new(), period_days, response_days, key_features, shifts: Shifts::new(period_days, response_days) }
    }

    /// The sums as `scoring.fleet_sums` keeps them (zeros left out), for `totals_from`.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in KEYS.iter().zip(&self.sums) {
            if *value != 0 {
                dict.set_item(*name, *value)?;
            }
        }
        for (band, count) in &self.other_bands {
            if *count != 0 {
                dict.set_item(format!("bands.{band}"), *count)?;
            }
        }
        Ok(dict)
    }
}

fn decoded(stored: &[u8]) -> PyResult<CustomerState> {
    state::decode(stored).map_err(PyValueError::new_err)
}

/// `scoring.fleet_sums.contribution` of a stored record, as the same dict.
#[pyfunction]
pub fn fleet_contribution<'py>(py: Python<'py>, stored: &[u8], at_ms: i64, period_days: i64, response_days: f64) -> PyResult<Bound<'py, PyDict>> {
    let part = fleet::contribution(&decoded(stored)?, at_ms, period_days, response_days);
    let dict = PyDict::new(py);
    for ((name, value), listed) in KEYS.iter().zip(&part.sums).zip(&part.listed) {
        if *listed {
            dict.set_item(*name, *value)?;
        }
    }
    if let Some(band) = part.other_band {
        dict.set_item(format!("bands.{band}"), 1)?;
    }
    Ok(dict)
}

/// `scoring.fleet_sums.unchanged_until` of a stored record.
#[pyfunction]
pub fn fleet_unchanged_until(stored: &[u8], at_ms: i64, period_days: i64, response_days: f64) -> PyResult<Option<i64>> {
    Ok(fleet::unchanged_until(&decoded(stored)?, at_ms, &Shifts::new(period_days, response_days)))
}
