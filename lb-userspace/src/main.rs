fn main() {
    println!("slicelb");
}
