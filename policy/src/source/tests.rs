use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: good, namespace: shop}\nspec: {podSelector: {}}\n";

fn parse(text: &str) -> (Vec<LoadedPolicy>, Vec<String>) {
    let (policies, errors) = parse_str(Path::new("policies/db.yaml"), text);
    (policies, errors.iter().map(ToString::to_string).collect())
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flowgate-policy-source-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn single_document() {
    let (policies, errors) = parse(GOOD);
    assert!(errors.is_empty());
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].document, 1);
    assert_eq!(policies[0].file, Path::new("policies/db.yaml"));
    assert_eq!(policies[0].policy_ref(), PolicyRef::new("shop", "good"));
}

#[test]
fn several_documents_with_empty_ones_skipped_but_counted() {
    let text = format!("---\n# only a comment\n---\n{GOOD}---\n{}", GOOD.replace("good", "second"));
    let (policies, errors) = parse(&text);
    assert!(errors.is_empty(), "{errors:?}");
    let found: Vec<(usize, &str)> = policies.iter().map(|p| (p.document, p.name())).collect();
    assert_eq!(found, vec![(2, "good"), (3, "second")]);
}

#[test]
fn missing_namespace_defaults_to_default() {
    let (policies, _) = parse(&GOOD.replace(", namespace: shop", ""));
    assert_eq!(policies[0].namespace(), "default");
    assert_eq!(policies[0].policy.metadata.namespace.as_deref(), Some("default"));
}

#[test]
fn wrong_kind_is_named() {
    let text = format!("{GOOD}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n");
    let (policies, errors) = parse(&text);
    assert_eq!(policies.len(), 1);
    assert_eq!(
        errors,
        vec!["policies/db.yaml: document 2: kind: only NetworkPolicy is supported, found \"ConfigMap\""]
    );
}

#[test]
fn missing_kind() {
    let (_, errors) = parse("apiVersion: networking.k8s.io/v1\nmetadata: {name: x}\n");
    assert_eq!(errors, vec!["policies/db.yaml: document 1: kind: required value (expected NetworkPolicy)"]);
}

#[test]
fn wrong_api_version() {
    let (_, errors) = parse(&GOOD.replace("networking.k8s.io/v1", "extensions/v1beta1"));
    assert_eq!(
        errors,
        vec![
            "policies/db.yaml: document 1: apiVersion: expected \"networking.k8s.io/v1\", found \"extensions/v1beta1\""
        ]
    );
    let (_, errors) = parse(&GOOD.replace("apiVersion: networking.k8s.io/v1\n", ""));
    assert_eq!(
        errors,
        vec!["policies/db.yaml: document 1: apiVersion: expected \"networking.k8s.io/v1\", found nothing"]
    );
}

#[test]
fn document_that_is_not_a_mapping() {
    let (_, errors) = parse("- a\n- b\n");
    assert_eq!(errors, vec!["policies/db.yaml: document 1: expected a mapping (a NetworkPolicy object), found a list"]);
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    let text = format!("{GOOD}---\nkind: NetworkPolicy\nmetadata: {{name: [unclosed\n");
    let (policies, errors) = parse(&text);
    assert_eq!(policies.len(), 1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0],
        "policies/db.yaml: document 2: line 8 column 1: YAML syntax error: did not find expected ',' or ']', \
         while parsing a flow sequence at line 7 column 18"
    );
}

#[test]
fn schema_error_has_field_path_line_and_column() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress:\n  - ports:\n    - port: [80]\n";
    let (_, errors) = parse(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0],
        "policies/db.yaml: document 1: line 7 column 13: not a valid NetworkPolicy: \
         spec.ingress[0].ports[0].port: invalid type: sequence, expected IntOrString"
    );
}

#[test]
fn validation_error_names_file_document_and_field() {
    let bad = GOOD.replace(
        "spec: {podSelector: {}}",
        "spec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 5432\n    - {port: 90, endPort: 80}",
    );
    let text = format!("{}---\n{bad}", GOOD.replace("good", "first"));
    let (policies, errors) = parse(&text);
    assert_eq!(policies.len(), 1);
    assert_eq!(errors, vec!["policies/db.yaml: document 2: spec.ingress[0].ports[1].endPort: must be >= port"]);
}

#[test]
fn every_validation_error_of_a_document_is_reported() {
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad}\nspec:\n  policyTypes: [Up]\n  ingress: [{ports: [{port: 0}]}]\n";
    let (_, errors) = parse(bad);
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn load_dir_reads_yaml_and_yml_sorted_and_skips_others() {
    let dir = TempDir::new();
    dir.write("b.yml", &GOOD.replace("good", "from-b"));
    dir.write("a.yaml", &GOOD.replace("good", "from-a"));
    dir.write("notes.txt", "not yaml");
    dir.write(".hidden.yaml", "garbage: [");
    fs::create_dir(dir.0.join("sub.yaml")).unwrap();
    let policies = load_dir(&dir.0).unwrap();
    let names: Vec<&str> = policies.iter().map(LoadedPolicy::name).collect();
    assert_eq!(names, vec!["from-a", "from-b"]);
    assert_eq!(policies[0].file, dir.0.join("a.yaml"));
}

#[test]
fn load_dir_collects_errors_from_every_file() {
    let dir = TempDir::new();
    dir.write("a.yaml", "kind: Service\napiVersion: v1\n");
    dir.write("b.yaml", &GOOD.replace("podSelector: {}", "podSelector: {}, policyTypes: [Sideways]"));
    dir.write("c.yaml", GOOD);
    let errors: Vec<String> = load_dir(&dir.0).unwrap_err().iter().map(ToString::to_string).collect();
    let a = dir.0.join("a.yaml");
    let b = dir.0.join("b.yaml");
    assert_eq!(
        errors,
        vec![
            format!("{}: document 1: kind: only NetworkPolicy is supported, found \"Service\"", a.display()),
            format!(
                "{}: document 1: spec.policyTypes[0]: unsupported value \"Sideways\": supported values: \"Ingress\", \"Egress\"",
                b.display()
            ),
        ]
    );
}

#[test]
fn load_dir_rejects_duplicate_names() {
    let dir = TempDir::new();
    dir.write("a.yaml", GOOD);
    dir.write("b.yaml", &format!("{}---\n{GOOD}", GOOD.replace("good", "other")));
    let errors: Vec<String> = load_dir(&dir.0).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        vec![format!(
            "{}: document 2: metadata.name: NetworkPolicy shop/good is already defined in {}: document 1",
            dir.0.join("b.yaml").display(),
            dir.0.join("a.yaml").display()
        )]
    );
}

#[test]
fn load_dir_same_name_in_different_namespaces_is_fine() {
    let dir = TempDir::new();
    dir.write("a.yaml", &format!("{GOOD}---\n{}", GOOD.replace("shop", "other")));
    assert_eq!(load_dir(&dir.0).unwrap().len(), 2);
}

#[test]
fn load_dir_missing_directory() {
    let errors = load_dir(Path::new("/nonexistent/flowgate-policies")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(matches!(errors[0], SourceError::ReadDir { .. }));
    assert!(errors[0].to_string().starts_with("/nonexistent/flowgate-policies: cannot read the policy directory: "));
}

#[test]
fn load_dir_empty_directory_is_no_policies() {
    let dir = TempDir::new();
    assert_eq!(load_dir(&dir.0).unwrap(), Vec::new());
}

#[test]
fn the_cache_parses_only_changed_files_and_sees_every_change() {
    let dir = TempDir::new();
    let named = |name: &str| GOOD.replace("name: good", &format!("name: {name}"));
    dir.write("a.yaml", &named("a"));
    dir.write("b.yaml", &named("b"));
    let mut cache = SourceCache::default();
    let first = cache.load_dir(&dir.0).expect("two good files");
    assert_eq!(first.iter().map(|p| p.name()).collect::<Vec<_>>(), ["a", "b"]);

    // b replaced (rename into place: a new inode, as editors and ConfigMap swaps do), a untouched.
    fs::write(dir.0.join(".b.tmp"), named("b2")).unwrap();
    fs::rename(dir.0.join(".b.tmp"), dir.0.join("b.yaml")).unwrap();
    let second = cache.load_dir(&dir.0).expect("two good files");
    assert!(Arc::ptr_eq(&first[0], &second[0]), "a.yaml was not parsed again");
    assert_eq!(second[1].name(), "b2", "b.yaml was");

    // An error is reported on every load (the file is read again), and a removed file is gone.
    dir.write("c.yaml", "kind: Pod\n");
    assert!(cache.load_dir(&dir.0).is_err());
    assert!(cache.load_dir(&dir.0).is_err(), "the broken file is still read");
    fs::remove_file(dir.0.join("c.yaml")).unwrap();
    fs::remove_file(dir.0.join("a.yaml")).unwrap();
    let third = cache.load_dir(&dir.0).expect("one good file");
    assert_eq!(third.iter().map(|p| p.name()).collect::<Vec<_>>(), ["b2"]);
    assert_eq!(load_dir(&dir.0).expect("the uncached loader agrees")[0], *third[0]);
}
