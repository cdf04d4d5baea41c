pub mod cnp;
pub mod file;
pub mod kube;
