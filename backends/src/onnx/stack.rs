//! Stacking the inputs of several requests along the first dimension into
//! one batch, and cutting the batch's outputs back into one answer each.

use protocol::tensor::{NamedTensor, TensorData};

/// Why a batch could not be stacked or split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// Requests disagree on an input's type or trailing dimensions.
    #[error("input '{0}' differs in type or shape between the batched requests")]
    Mismatch(String),
    /// An output does not have the batch's rows in its first dimension.
    #[error("output '{0}' does not have one entry per batched row")]
    OutputRows(String),
}

/// The rows (first dimension) of a request whose inputs were checked.
pub fn rows_of(inputs: &[NamedTensor]) -> usize {
    inputs
        .first()
        .and_then(|t| t.shape.first())
        .map_or(1, |&r| usize::try_from(r).unwrap_or(0))
}

/// Groups requests that can be stacked together: those whose inputs agree
/// on every dimension but the first (a model with a free sequence length
/// gets requests of several lengths). Indices into `requests`, each group
/// in arrival order, groups in the order of their first request.
pub fn compatible_groups(requests: &[&[NamedTensor]]) -> Vec<Vec<usize>> {
    let trailing = |r: &[NamedTensor]| -> Vec<(String, Vec<i64>)> {
        let mut v: Vec<(String, Vec<i64>)> = r
            .iter()
            .map(|t| (t.name.clone(), t.shape.get(1..).unwrap_or(&[]).to_vec()))
            .collect();
        v.sort();
        v
    };
    let mut keys: Vec<Vec<(String, Vec<i64>)>> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let key = trailing(r);
        match keys.iter().position(|k| *k == key) {
            Some(g) => groups[g].push(i),
            None => {
                keys.push(key);
                groups.push(vec![i]);
            }
        }
    }
    groups
}

/// Stacks the requests' inputs (each already checked against the model, so
/// names match) along dimension 0, in the order of `names`.
pub fn stack(
    names: &[String],
    requests: &[&[NamedTensor]],
) -> Result<Vec<NamedTensor>, StackError> {
    names
        .iter()
        .map(|name| {
            let mut parts = requests.iter().map(|r| r.iter().find(|t| &t.name == name));
            let first = parts
                .next()
                .flatten()
                .ok_or_else(|| StackError::Mismatch(name.clone()))?;
            let mut out = first.clone();
            for t in parts {
                let t = t.ok_or_else(|| StackError::Mismatch(name.clone()))?;
                if t.shape.get(1..) != first.shape.get(1..) || t.shape.is_empty() {
                    return Err(StackError::Mismatch(name.clone()));
                }
                if !out.data.extend_from(&t.data) {
                    return Err(StackError::Mismatch(name.clone()));
                }
                out.shape[0] += t.shape[0];
            }
            Ok(out)
        })
        .collect()
}

/// Cuts each output into consecutive pieces of `rows[i]` rows, one answer
/// per request.
pub fn split(
    outputs: Vec<NamedTensor>,
    rows: &[usize],
) -> Result<Vec<Vec<NamedTensor>>, StackError> {
    let total: usize = rows.iter().sum();
    let mut answers: Vec<Vec<NamedTensor>> = rows.iter().map(|_| Vec::new()).collect();
    for out in outputs {
        let bad = || StackError::OutputRows(out.name.clone());
        let first = *out.shape.first().ok_or_else(bad)?;
        if usize::try_from(first).ok() != Some(total) {
            return Err(bad());
        }
        let per_row = out.data.len().checked_div(total).unwrap_or(0);
        if per_row * total != out.data.len() {
            return Err(bad());
        }
        let mut at = 0;
        for (answer, &r) in answers.iter_mut().zip(rows) {
            let data: TensorData = out
                .data
                .slice(at * per_row..(at + r) * per_row)
                .ok_or_else(bad)?;
            let mut shape = out.shape.clone();
            shape[0] = r as i64;
            answer.push(NamedTensor {
                name: out.name.clone(),
                shape,
                data,
            });
            at += r;
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[i64], v: &[f32]) -> NamedTensor {
        NamedTensor {
            name: name.into(),
            shape: shape.to_vec(),
            data: TensorData::Fp32(v.to_vec()),
        }
    }

    #[test]
    fn stacked_requests_split_back_into_their_own_rows() {
        let a = vec![t("x", &[1, 2], &[1.0, 2.0])];
        let b = vec![t("x", &[2, 2], &[3.0, 4.0, 5.0, 6.0])];
        let names = vec!["x".to_string()];
        let batch = stack(&names, &[&a, &b]).unwrap();
        assert_eq!(
            batch,
            vec![t("x", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]
        );
        let answers = split(batch, &[rows_of(&a), rows_of(&b)]).unwrap();
        assert_eq!(answers, vec![a, b]);
    }

    #[test]
    fn requests_of_different_trailing_shapes_go_to_different_groups() {
        let a = vec![t("x", &[1, 2], &[1.0, 2.0])];
        let b = vec![t("x", &[1, 3], &[1.0, 2.0, 3.0])];
        let c = vec![t("x", &[2, 2], &[1.0, 2.0, 3.0, 4.0])];
        assert_eq!(
            compatible_groups(&[&a, &b, &c, &b]),
            vec![vec![0, 2], vec![1, 3]]
        );
    }

    #[test]
    fn mismatched_trailing_dims_and_short_outputs_are_errors() {
        let a = vec![t("x", &[1, 2], &[1.0, 2.0])];
        let b = vec![t("x", &[1, 3], &[3.0, 4.0, 5.0])];
        let names = vec!["x".to_string()];
        assert_eq!(
            stack(&names, &[&a, &b]),
            Err(StackError::Mismatch("x".into()))
        );
        let out = vec![t("y", &[2, 1], &[1.0, 2.0])];
        assert_eq!(split(out, &[1, 2]), Err(StackError::OutputRows("y".into())));
    }
}
