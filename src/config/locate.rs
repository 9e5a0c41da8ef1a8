//! Maps YAML paths (`routes[2].upstream`) to line and column, so validation errors
//! found after deserialisation can still point into the file.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct Locator {
    positions: HashMap<String, (usize, usize)>,
}

impl Locator {
    pub fn new(text: &str) -> Locator {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by the serde parse; positions found so far still help.
        let _ = parser.load(&mut walker, false);
        Locator {
            positions: walker.positions,
        }
    }

    /// Line and column (1-based) of the value at `path`, or of its closest ancestor.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(pos) = self.positions.get(path) {
                return Some(*pos);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Walker {
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(k) } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => {
                    path.push('[');
                    path.push_str(&index.to_string());
                    path.push(']');
                }
            }
        }
        path
    }

    /// Called for every node. Returns true when the node is a mapping key.
    fn node(&mut self, mark: Marker, scalar: Option<&str>) -> bool {
        if let Some(Frame::Map { key: key @ None }) = self.stack.last_mut() {
            *key = Some(scalar.unwrap_or("?").to_string());
            return true;
        }
        let path = self.path();
        self.positions
            .entry(path)
            .or_insert((mark.line(), mark.col() + 1));
        false
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(ref value, ..) => {
                let is_key = self.node(mark, Some(value));
                if !is_key {
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                let is_key = self.node(mark, None);
                if !is_key {
                    self.value_done();
                }
            }
            Event::MappingStart(..) => {
                self.node(mark, None);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.node(mark, None);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let text = "server:\n  listen: 1.2.3.4:80\nroutes:\n  - name: a\n    upstream: x\n  - name: b\n    match: { path_prefix: /b }\n    upstream: ordrs\n";
        let loc = Locator::new(text);
        assert_eq!(loc.find("server.listen"), Some((2, 11)));
        assert_eq!(loc.find("routes[1].upstream"), Some((8, 15)));
        assert_eq!(loc.find("routes[1].match.path_prefix"), Some((7, 27)));
        assert_eq!(loc.find("routes[1].missing").map(|p| p.0), Some(6));
    }
}
