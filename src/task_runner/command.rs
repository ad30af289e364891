//! The executor command line. Pure: no IO.
//!
//! The executor is given as one string (`--executor` or `MCP_TASK_RUNNER_EXECUTOR`)
//! and split into a program and its arguments without a shell:
//! - words are separated by unquoted whitespace;
//! - `'...'` quotes literally (no escapes inside);
//! - `"..."` quotes with `\"` and `\\` as the only escapes;
//! - outside quotes, `\` escapes the next character;
//! - quoted parts join the word they touch (`a'b c'd` is one word `ab cd`).
//!
//! Nothing else is interpreted: no variables, globs, pipes or redirections. For those,
//! run a shell explicitly: `sh -c 'cat; echo done'`.

use super::error::TaskRunnerError;

/// The default executor: Claude Code in print mode, reading the task on stdin.
pub const DEFAULT_EXECUTOR: &str = "claude -p";

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorCommand {
    pub program: String,
    pub args: Vec<String>,
}

impl ExecutorCommand {
    /// Splits `line` by the rules in the module docs.
    pub fn parse(line: &str) -> Result<Self, TaskRunnerError> {
        let mut words = split_words(line)?.into_iter();
        let program = words
            .next()
            .ok_or_else(|| TaskRunnerError::InvalidExecutor("the command is empty".into()))?;
        Ok(Self {
            program,
            args: words.collect(),
        })
    }
}

fn split_words(line: &str) -> Result<Vec<String>, TaskRunnerError> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => current.push(c),
                        None => return Err(unclosed("'")),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                            None => return Err(unclosed("\"")),
                        },
                        Some(c) => current.push(c),
                        None => return Err(unclosed("\"")),
                    }
                }
            }
            '\\' => {
                let escaped = chars
                    .next()
                    .ok_or_else(|| TaskRunnerError::InvalidExecutor("the command ends with a lone `\\`".into()))?;
                word.get_or_insert_with(String::new).push(escaped);
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

fn unclosed(quote: &str) -> TaskRunnerError {
    TaskRunnerError::InvalidExecutor(format!("unclosed `{quote}` quote"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &str) -> Vec<String> {
        let command = ExecutorCommand::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let mut words = vec![command.program];
        words.extend(command.args);
        words
    }

    #[test]
    fn plain_words_split_on_whitespace() {
        assert_eq!(split("claude -p"), ["claude", "-p"]);
        assert_eq!(split("  a\tb \n c  "), ["a", "b", "c"]);
    }

    #[test]
    fn single_quotes_keep_shell_snippets_together() {
        assert_eq!(split("sh -c 'cat; echo done'"), ["sh", "-c", "cat; echo done"]);
        assert_eq!(split(r"echo 'a\b'"), ["echo", r"a\b"]);
    }

    #[test]
    fn double_quotes_allow_escaped_quotes() {
        assert_eq!(
            split(r#"sh -c "echo \"hi\" \\ \$x""#),
            ["sh", "-c", r#"echo "hi" \ \$x"#]
        );
    }

    #[test]
    fn quotes_join_adjacent_text_and_empty_quotes_are_words() {
        assert_eq!(split("a'b c'd"), ["ab cd"]);
        assert_eq!(split("prog '' x"), ["prog", "", "x"]);
        assert_eq!(split(r"a\ b"), ["a b"]);
    }

    #[test]
    fn bad_command_lines_are_rejected() {
        for line in ["", "   ", "sh -c 'open", "sh -c \"open", "trailing\\"] {
            assert!(ExecutorCommand::parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn the_default_executor_is_claude_in_print_mode() {
        assert_eq!(split(DEFAULT_EXECUTOR), ["claude", "-p"]);
    }
}
