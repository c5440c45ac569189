//! Printing API answers: pretty JSON (`--output json`) or a plain table.

use serde_json::Value;

use super::OutputFormat;

/// Prints a JSON value in the chosen format.
pub fn print(value: &Value, format: OutputFormat) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        OutputFormat::Table => println!("{}", table(value)),
    }
}

/// Columns shown first, in this order, when present.
const LEADING: [&str; 8] = [
    "id", "tenant", "agent", "queue", "call_id", "site", "name", "state",
];

/// An array of objects becomes one row per object; an object becomes `key  value` lines.
pub fn table(value: &Value) -> String {
    match value {
        Value::Array(rows) if rows.is_empty() => "(none)".to_string(),
        Value::Array(rows) => {
            let mut columns: Vec<String> = Vec::new();
            for row in rows {
                if let Value::Object(map) = row {
                    for key in map.keys() {
                        if !columns.contains(key) {
                            columns.push(key.clone());
                        }
                    }
                }
            }
            // Identity first (JSON objects come back with sorted keys), at most 10 columns.
            columns.sort_by_key(|c| {
                (
                    LEADING.iter().position(|l| l == c).unwrap_or(LEADING.len()),
                    c.clone(),
                )
            });
            columns.truncate(10);
            if columns.is_empty() {
                return rows.iter().map(cell).collect::<Vec<_>>().join("\n");
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|row| columns.iter().map(|c| cell(&row[c.as_str()])).collect())
                .collect();
            render(&columns, &cells)
        }
        Value::Object(map) => {
            let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
            map.iter()
                .map(|(k, v)| format!("{k:<width$}  {}", cell(v)))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Value::Null => "ok".to_string(),
        other => cell(other),
    }
}

fn render(columns: &[String], cells: &[Vec<String>]) -> String {
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |row: Vec<String>| {
        row.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
    out.extend(cells.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// One cell: strings bare, short arrays comma-joined, objects as compact JSON (cut at 60).
fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows() {
        let v = serde_json::json!([{"id": "gd", "skills": ["a", "b"]}, {"id": "gx", "skills": []}]);
        let t = table(&v);
        assert!(t.starts_with("ID"));
        assert!(t.contains("gd  a,b"));
    }
}
