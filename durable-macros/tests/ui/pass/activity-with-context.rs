use durable_core::prelude::*;

/// Reports who called.
#[activity]
pub async fn whoami(ctx: ActivityContext, greeting: String) -> Result<String, ActivityError> {
    Ok(format!("{greeting} from {}", ctx.instance_id))
}

#[activity]
async fn no_input() -> Result<u32, std::io::Error> {
    Ok(7)
}

fn main() {
    let _ = (whoami, no_input);
    assert_eq!(<whoami as Activity>::NAME, "whoami");
}
