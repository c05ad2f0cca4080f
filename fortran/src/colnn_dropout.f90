!> Dropout: the identity at inference (Keras scales during training, not at inference).
module colnn_dropout
  use colnn_kinds, only: wp
  use colnn_status
  use colnn_spec, only: layer_spec_t
  use colnn_layer, only: layer_t
  implicit none
  private

  public :: dropout_t

  type, extends(layer_t) :: dropout_t
    real(wp) :: rate = 0
  contains
    procedure :: init => dropout_init
    procedure :: forward => dropout_forward
    procedure :: describe => dropout_describe
    procedure :: type_name => dropout_type_name
    procedure :: is_elementwise => dropout_is_elementwise
    procedure :: apply_inplace => dropout_apply_inplace
  end type dropout_t

contains

  function dropout_type_name(self) result(name)
    class(dropout_t), intent(in) :: self
    character(len=:), allocatable :: name
    name = 'dropout'
  end function dropout_type_name

  subroutine dropout_init(self, spec, n_in, stat, errmsg)
    class(dropout_t), intent(inout) :: self
    type(layer_spec_t), intent(inout) :: spec
    integer, intent(in) :: n_in
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    self%n_in = n_in
    self%n_out = n_in
    call spec%get_real('rate', self%rate, stat, errmsg); if (stat /= 0) return
    if (self%rate < 0 .or. self%rate >= 1) then
      stat = COLNN_ERR_FORMAT
      errmsg = spec%where()//': dropout rate must be in [0, 1)'
      return
    end if
    call spec%check_all_used(stat, errmsg)
  end subroutine dropout_init

  subroutine dropout_describe(self, spec)
    class(dropout_t), intent(in) :: self
    type(layer_spec_t), intent(inout) :: spec
    call spec%set_real('rate', self%rate)
  end subroutine dropout_describe

  pure logical function dropout_is_elementwise(self)
    class(dropout_t), intent(in) :: self
    dropout_is_elementwise = .true.
  end function dropout_is_elementwise

  subroutine dropout_apply_inplace(self, nc, a)
    class(dropout_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(inout) :: a(self%n_out, nc)
  end subroutine dropout_apply_inplace

  subroutine dropout_forward(self, nc, x, y)
    class(dropout_t), intent(in) :: self
    integer, intent(in) :: nc
    real(wp), intent(in) :: x(self%n_in, nc)
    real(wp), intent(out) :: y(self%n_out, nc)
    y = x
  end subroutine dropout_forward
end module colnn_dropout
