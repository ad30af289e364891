//! Markdown task lists and task file names. Pure: no IO.
//!
//! Two formats are understood:
//! - `## Task N: Title` sections; a task's body is everything up to the next task
//!   heading (headings inside fenced code blocks do not count). `## Task N - Title`,
//!   `## Task N. Title` and `## Task N` (no title) are accepted too.
//! - When there is no such heading: `- [ ] item` checklist lines (`*` and `+` bullets
//!   too). Lines indented below an item belong to it. Checked items (`- [x]`) are
//!   already done and are skipped.

/// Longest slug used in a task file name.
pub const MAX_SLUG_LEN: usize = 50;

/// Most tasks one list may hold (the index has three digits).
pub const MAX_TASKS: usize = 999;

/// One task read from a task list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedTask {
    /// The heading written at the top of the task file, e.g. `Task 2: Add tests`.
    pub heading: String,
    /// The title the file name is made from.
    pub title: String,
    /// Everything below the heading, trimmed of blank lines at both ends.
    pub body: String,
}

impl ParsedTask {
    /// The text of the task file (and what the executor reads on stdin).
    pub fn file_text(&self) -> String {
        if self.body.is_empty() {
            format!("# {}\n", self.heading)
        } else {
            format!("# {}\n\n{}\n", self.heading, self.body)
        }
    }
}

/// The tasks of a Markdown task list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedList {
    pub tasks: Vec<ParsedTask>,
    /// Checklist items already checked (`- [x]`), not turned into tasks.
    pub skipped_checked: usize,
}

/// Parses a Markdown task list (see the module docs for the accepted formats).
pub fn parse_task_list(markdown: &str) -> ParsedList {
    let sections = parse_sections(markdown);
    if sections.is_empty() {
        parse_checklist(markdown)
    } else {
        ParsedList {
            tasks: sections,
            skipped_checked: 0,
        }
    }
}

/// Lines of `markdown` paired with whether they are inside a fenced code block
/// (the fence lines themselves count as inside).
fn lines_with_fences(markdown: &str) -> Vec<(&str, bool)> {
    let mut fence: Option<&str> = None;
    markdown
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let marker = ["```", "~~~"].into_iter().find(|marker| trimmed.starts_with(marker));
            match (fence, marker) {
                (None, Some(marker)) => {
                    fence = Some(marker);
                    (line, true)
                }
                (Some(open), Some(marker)) if open == marker => {
                    fence = None;
                    (line, true)
                }
                (open, _) => (line, open.is_some()),
            }
        })
        .collect()
}

/// `## Task N: Title` → `(N, Title)`; `None` for any other line.
fn task_heading(line: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix("## ")?.trim_start();
    let word = rest.get(..4)?;
    if !word.eq_ignore_ascii_case("task") {
        return None;
    }
    let rest = rest.get(4..)?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let rest = rest.trim_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number = rest[..digits].parse().ok()?;
    let rest = &rest[digits..];
    let title = match rest.chars().next() {
        None => String::new(),
        Some(':' | '.' | '-' | ')') => rest[1..].trim().to_string(),
        Some(c) if c.is_whitespace() => {
            let rest = rest.trim_start();
            rest.strip_prefix([':', '-', '.']).unwrap_or(rest).trim().to_string()
        }
        Some(_) => return None,
    };
    Some((number, title.trim_end_matches('#').trim().to_string()))
}

fn parse_sections(markdown: &str) -> Vec<ParsedTask> {
    let mut tasks = Vec::new();
    let mut current: Option<(ParsedTask, Vec<&str>)> = None;
    for (line, in_fence) in lines_with_fences(markdown) {
        let heading = if in_fence { None } else { task_heading(line) };
        match heading {
            Some((number, title)) => {
                if let Some((task, body)) = current.take() {
                    tasks.push(finish(task, &body));
                }
                let heading = if title.is_empty() {
                    format!("Task {number}")
                } else {
                    format!("Task {number}: {title}")
                };
                let title = if title.is_empty() {
                    format!("task {number}")
                } else {
                    title
                };
                let task = ParsedTask {
                    heading,
                    title,
                    body: String::new(),
                };
                current = Some((task, Vec::new()));
            }
            None => {
                if let Some((_, body)) = current.as_mut() {
                    body.push(line);
                }
            }
        }
    }
    if let Some((task, body)) = current {
        tasks.push(finish(task, &body));
    }
    tasks
}

fn finish(mut task: ParsedTask, body: &[&str]) -> ParsedTask {
    task.body = trim_blank_lines(body).join("\n");
    task
}

fn trim_blank_lines<'a, 'b>(lines: &'a [&'b str]) -> &'a [&'b str] {
    let start = lines
        .iter()
        .position(|line| !line.trim().is_empty())
        .unwrap_or(lines.len());
    let end = lines
        .iter()
        .rposition(|line| !line.trim().is_empty())
        .map_or(start, |last| last + 1);
    &lines[start..end]
}

/// A checklist line: `(indent, checked, text)`.
fn checklist_item(line: &str) -> Option<(usize, bool, &str)> {
    let indent = line.len() - line.trim_start().len();
    let rest = line.trim_start();
    let rest = rest.strip_prefix(['-', '*', '+'])?;
    let rest = rest.strip_prefix([' ', '\t'])?.trim_start();
    let checked = if let Some(rest) = rest.strip_prefix("[ ]") {
        (false, rest)
    } else if let Some(rest) = rest.strip_prefix("[x]").or_else(|| rest.strip_prefix("[X]")) {
        (true, rest)
    } else {
        return None;
    };
    let text = checked.1.trim();
    if text.is_empty() {
        return None;
    }
    Some((indent, checked.0, text))
}

fn parse_checklist(markdown: &str) -> ParsedList {
    let mut list = ParsedList::default();
    // The indent of top-level items: set by the first item seen.
    let mut top_indent: Option<usize> = None;
    // The item being collected: (title, continuation lines); `None` between items
    // and while skipping a checked item.
    let mut current: Option<(String, Vec<String>)> = None;
    let mut in_item = false;
    for (line, in_fence) in lines_with_fences(markdown) {
        let indent = line.len() - line.trim_start().len();
        let item = if in_fence { None } else { checklist_item(line) };
        if let Some((item_indent, checked, text)) = item {
            let top = *top_indent.get_or_insert(item_indent);
            if item_indent <= top {
                push_item(&mut list, current.take());
                in_item = true;
                if checked {
                    list.skipped_checked += 1;
                } else {
                    current = Some((text.to_string(), Vec::new()));
                }
                continue;
            }
        }
        let continues = in_item && (line.trim().is_empty() || in_fence || indent > top_indent.unwrap_or(0));
        if continues {
            if let Some((_, body)) = current.as_mut() {
                body.push(line.to_string());
            }
        } else {
            push_item(&mut list, current.take());
            in_item = false;
        }
    }
    push_item(&mut list, current);
    list
}

fn push_item(list: &mut ParsedList, item: Option<(String, Vec<String>)>) {
    let Some((title, body)) = item else {
        return;
    };
    let body: Vec<&str> = body.iter().map(String::as_str).collect();
    let body = dedent(trim_blank_lines(&body));
    list.tasks.push(ParsedTask {
        heading: title.clone(),
        title,
        body,
    });
}

/// Removes the indentation common to all non-blank lines.
fn dedent(lines: &[&str]) -> String {
    let common = lines
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|line| line.get(common..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A lowercase ASCII slug: letters and digits, other runs become `-`, at most
/// [`MAX_SLUG_LEN`] characters; `task` when nothing is left.
pub fn slugify(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            if slug.len() == MAX_SLUG_LEN {
                break;
            }
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            if slug.len() + 1 >= MAX_SLUG_LEN {
                break;
            }
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        "task".to_string()
    } else {
        slug.to_string()
    }
}

/// `001_slug.md` for the task at `index` (1-based).
pub fn task_file_name(index: usize, title: &str) -> String {
    format!("{index:03}_{}.md", slugify(title))
}

/// Whether `name` is a task file name: `NNN_slug.md` with a lowercase ASCII slug.
pub fn is_task_file_name(name: &str) -> bool {
    task_stem(name).is_some()
}

/// The stem (`001_slug`) of a task file name, `None` when `name` is not one.
pub fn task_stem(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".md")?;
    let (index, slug) = stem.split_at_checked(3)?;
    let slug = slug.strip_prefix('_')?;
    let valid = index.bytes().all(|b| b.is_ascii_digit())
        && !slug.is_empty()
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then_some(stem)
}

/// The result (stdout) file next to a task: `001_slug.result.md`.
pub fn result_file_name(stem: &str) -> String {
    format!("{stem}.result.md")
}

/// The log (stderr) file next to a task: `001_slug.log`.
pub fn log_file_name(stem: &str) -> String {
    format!("{stem}.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn titles(list: &ParsedList) -> Vec<&str> {
        list.tasks.iter().map(|task| task.title.as_str()).collect()
    }

    #[test]
    fn task_sections_take_everything_until_the_next_task_heading() {
        let list = parse_task_list(
            "# Project\n\nintro text\n\n## Task 1: Set up the repo\n\nCreate it.\n\n### Notes\n- [ ] not a task here\n\n## Task 2: Write tests\nAll of them.\n",
        );
        assert_eq!(titles(&list), ["Set up the repo", "Write tests"]);
        assert_eq!(list.tasks[0].heading, "Task 1: Set up the repo");
        assert_eq!(list.tasks[0].body, "Create it.\n\n### Notes\n- [ ] not a task here");
        assert_eq!(list.tasks[1].body, "All of them.");
    }

    #[test]
    fn task_heading_variants_are_accepted() {
        assert_eq!(task_heading("## Task 3: Title"), Some((3, "Title".into())));
        assert_eq!(task_heading("## task 4 - Title"), Some((4, "Title".into())));
        assert_eq!(task_heading("## Task 5. Title"), Some((5, "Title".into())));
        assert_eq!(task_heading("## Task 6"), Some((6, String::new())));
        assert_eq!(task_heading("## Task 7: Title ##"), Some((7, "Title".into())));
        assert_eq!(task_heading("## Tasks 1: no"), None);
        assert_eq!(task_heading("### Task 1: deeper"), None);
        assert_eq!(task_heading("## Task one"), None);
        assert_eq!(task_heading("## Task 1x"), None);
    }

    #[test]
    fn headings_inside_code_fences_do_not_start_tasks() {
        let list = parse_task_list("## Task 1: A\n```\n## Task 2: B\n```\ntext\n");
        assert_eq!(titles(&list), ["A"]);
        assert_eq!(list.tasks[0].body, "```\n## Task 2: B\n```\ntext");
    }

    #[test]
    fn a_task_without_title_gets_a_numbered_one() {
        let list = parse_task_list("## Task 9\nbody\n");
        assert_eq!(list.tasks[0].heading, "Task 9");
        assert_eq!(list.tasks[0].title, "task 9");
        assert_eq!(task_file_name(1, &list.tasks[0].title), "001_task-9.md");
    }

    #[test]
    fn checklist_items_become_tasks_and_checked_items_are_skipped() {
        let list = parse_task_list(
            "# Todo\n\n- [ ] First thing\n  more about it\n\n  - sub point\n- [x] Done already\n* [ ] Second thing\n\nA closing paragraph.\n",
        );
        assert_eq!(titles(&list), ["First thing", "Second thing"]);
        assert_eq!(list.tasks[0].body, "more about it\n\n- sub point");
        assert_eq!(list.tasks[1].body, "");
        assert_eq!(list.skipped_checked, 1);
        assert_eq!(list.tasks[1].file_text(), "# Second thing\n");
    }

    #[test]
    fn nested_checklist_items_belong_to_their_parent() {
        let list = parse_task_list("- [ ] Parent\n  - [ ] child\n- [ ] Next\n");
        assert_eq!(titles(&list), ["Parent", "Next"]);
        assert_eq!(list.tasks[0].body, "- [ ] child");
    }

    #[test]
    fn a_list_without_tasks_is_empty() {
        let list = parse_task_list("# Notes\n\n- plain bullet\n- [ ]\n");
        assert!(list.tasks.is_empty());
    }

    #[test]
    fn file_text_has_heading_and_body() {
        let task = ParsedTask {
            heading: "Task 1: A".into(),
            title: "A".into(),
            body: "do it".into(),
        };
        assert_eq!(task.file_text(), "# Task 1: A\n\ndo it\n");
    }

    #[test]
    fn slugs_are_lowercase_ascii_and_bounded() {
        assert_eq!(slugify("Set up the Repo!"), "set-up-the-repo");
        assert_eq!(slugify("  --Hello__World--  "), "hello-world");
        assert_eq!(slugify("Ünïcödé only"), "n-c-d-only");
        assert_eq!(slugify("???"), "task");
        let long = slugify(&"word ".repeat(40));
        assert!(long.len() <= MAX_SLUG_LEN, "{long}");
        assert!(!long.ends_with('-'));
    }

    #[test]
    fn task_file_names_round_trip() {
        let name = task_file_name(7, "Write the README");
        assert_eq!(name, "007_write-the-readme.md");
        assert!(is_task_file_name(&name));
        assert_eq!(task_stem(&name), Some("007_write-the-readme"));
        assert_eq!(
            result_file_name("007_write-the-readme"),
            "007_write-the-readme.result.md"
        );
        assert_eq!(log_file_name("007_write-the-readme"), "007_write-the-readme.log");
    }

    #[test]
    fn other_files_are_not_task_files() {
        for name in [
            "001_a.result.md",
            "001_a.log",
            "tasks.md",
            "01_a.md",
            "001_.md",
            "001_A.md",
            "abc_a.md",
            ".task-status.json",
        ] {
            assert!(!is_task_file_name(name), "{name}");
        }
    }
}
