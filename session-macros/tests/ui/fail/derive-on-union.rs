use tg_session::Session;

#[derive(Session)]
#[session(key = "bits")]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
