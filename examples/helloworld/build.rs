fn main() {
    micro::build::compile(&["proto/helloworld.proto"]).expect("compile proto/helloworld.proto");
}
