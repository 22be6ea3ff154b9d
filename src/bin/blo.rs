fn main() {
    let choice = blo::Device::best_available();
    println!("{}", choice.reason);
}
